"""The app's style: Qt's own (Fusion on Linux) plus a visible keyboard focus ring on buttons.

Fusion draws no focus indication on push buttons, so a keyboard user cannot see that Tab reached Send.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF
from PySide6.QtGui import QPainter, QPen
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QStyleOption, QWidget

FOCUS_RING_WIDTH = 2.0


class FocusRingStyle(QProxyStyle):
    def drawControl(
        self,
        element: QStyle.ControlElement,
        option: QStyleOption,
        painter: QPainter,
        widget: QWidget | None = None,
    ) -> None:
        super().drawControl(element, option, painter, widget)
        if element is QStyle.ControlElement.CE_PushButton and option.state & QStyle.StateFlag.State_HasFocus:
            painter.save()
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(QPen(option.palette.highlight().color(), FOCUS_RING_WIDTH))
            half = FOCUS_RING_WIDTH / 2
            painter.drawRoundedRect(QRectF(option.rect).adjusted(half, half, -half, -half), 3, 3)
            painter.restore()


def install_style(app: QApplication) -> None:
    if not isinstance(app.style(), FocusRingStyle):
        app.setStyle(FocusRingStyle(app.style().name()))
