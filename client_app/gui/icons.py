"""Status icons drawn with QPainter: no image files to ship, crisp at any tray size."""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

from client_app.gui.status_text import TONE_COLOURS, Tone

_SIZES = (16, 22, 24, 32, 48, 64)


def _draw(size: int, tone: Tone) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    margin = size * 0.06
    disc = QRectF(margin, margin, size - 2 * margin, size - 2 * margin)
    painter.setPen(QPen(QColor(TONE_COLOURS[tone]).darker(130), max(1.0, size / 16)))
    painter.setBrush(QColor(TONE_COLOURS[tone]))
    painter.drawEllipse(disc)
    # A white glyph inside tells the states apart without relying on colour alone.
    pen = QPen(QColor("white"), max(1.5, size / 9), Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    s = size
    if tone is Tone.OK:  # check mark
        path = QPainterPath(QPointF(s * 0.28, s * 0.52))
        path.lineTo(s * 0.44, s * 0.68)
        path.lineTo(s * 0.72, s * 0.34)
        painter.drawPath(path)
    elif tone is Tone.BUSY:  # three dots: work in progress
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("white"))
        for x in (0.3, 0.5, 0.7):
            painter.drawEllipse(QPointF(s * x, s * 0.5), s * 0.07, s * 0.07)
    elif tone is Tone.WAITING:  # clock hands: will retry by itself
        painter.drawLine(QPointF(s * 0.5, s * 0.5), QPointF(s * 0.5, s * 0.28))
        painter.drawLine(QPointF(s * 0.5, s * 0.5), QPointF(s * 0.68, s * 0.6))
    elif tone is Tone.PROBLEM:  # exclamation mark
        painter.drawLine(QPointF(s * 0.5, s * 0.27), QPointF(s * 0.5, s * 0.56))
        painter.drawPoint(QPointF(s * 0.5, s * 0.72))
    else:  # OFF: a dash
        painter.drawLine(QPointF(s * 0.32, s * 0.5), QPointF(s * 0.68, s * 0.5))
    painter.end()
    return pixmap


@cache
def status_icon(tone: Tone) -> QIcon:
    """Icon for a status tone; cached (needs a QGuiApplication)."""
    icon = QIcon()
    for size in _SIZES:
        icon.addPixmap(_draw(size, tone))
    return icon


def status_pixmap(tone: Tone, size: int) -> QPixmap:
    return _draw(size, tone)
