"""First-launch progress: the setup steps as they happen, each failure in plain words with Retry."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from client_app.device.status import FirstRunStep, StepOutcome
from client_app.gui.status_text import STEP_LABELS, TONE_COLOURS, Tone, step_detail

PENDING = "pending"  # before a step starts: shown, but not an outcome the core reports
RUNNING, DONE, FAILED = StepOutcome.RUNNING, StepOutcome.DONE, StepOutcome.FAILED

_MARKS = {
    PENDING: ("○", TONE_COLOURS[Tone.OFF]),
    RUNNING: ("◔", TONE_COLOURS[Tone.BUSY]),
    DONE: ("✓", TONE_COLOURS[Tone.OK]),
    FAILED: ("✗", TONE_COLOURS[Tone.PROBLEM]),
}

# What a person can do about a failed step; the core's detail line says what happened.
FAILURE_ADVICE: dict[FirstRunStep, str] = {
    FirstRunStep.KEY: "This computer could not create its identity.",
    FirstRunStep.CERTIFICATE: (
        "This computer could not issue its certificate. The installation may be damaged: "
        "reinstalling the app usually fixes it."
    ),
    FirstRunStep.KEYRING: (
        "The identity could not be stored in the system keyring. Make sure your keyring or "
        "password manager is running and unlocked, then retry."
    ),
    FirstRunStep.REGISTER: (
        "The provisioning service could not be reached or refused this computer. Check the "
        "network and the settings (provisioning endpoint, ID scope, proxy), then retry."
    ),
    FirstRunStep.CONNECT: (
        "The cloud could not be reached. Check the network and proxy, then retry. The app "
        "also keeps retrying by itself."
    ),
}


class FirstRunPanel(QGroupBox):
    """One row per FirstRunStep; a failure shows an explanation and a Retry button."""

    retryRequested = Signal()
    settingsRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Setting up this computer", parent)
        self.setObjectName("firstRunPanel")
        self._outcomes: dict[FirstRunStep, str] = {}
        self._marks: dict[FirstRunStep, QLabel] = {}
        self._details: dict[FirstRunStep, QLabel] = {}
        grid = QGridLayout()
        grid.setColumnStretch(2, 1)
        for row, step in enumerate(FirstRunStep):
            mark = QLabel()
            mark.setFixedWidth(18)
            mark.setAlignment(Qt.AlignmentFlag.AlignCenter)
            title = QLabel(STEP_LABELS[step])
            detail = QLabel()
            detail.setWordWrap(True)
            detail.setStyleSheet("color: palette(placeholder-text);")
            detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(mark, row, 0)
            grid.addWidget(title, row, 1)
            grid.addWidget(detail, row, 2)
            self._marks[step], self._details[step] = mark, detail

        self.failure_box = QFrame()
        self.failure_box.setObjectName("firstRunFailure")
        self.failure_box.setStyleSheet(
            "#firstRunFailure { border: 1px solid #c9362c; border-radius: 4px; background: #fdecea; }"
            "#firstRunFailure QLabel { color: #5f1712; }"
        )
        self.failure_text = QLabel()
        self.failure_text.setWordWrap(True)
        self.failure_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self._retry_clicked)
        # Most setup failures are fixed in the settings (endpoint, ID scope, proxy): one click away.
        self.settings_button = QPushButton("Settings…")
        self.settings_button.clicked.connect(self.settingsRequested)
        actions = QVBoxLayout()
        actions.addWidget(self.retry_button)
        actions.addWidget(self.settings_button)
        actions.addStretch(1)
        failure_layout = QHBoxLayout(self.failure_box)
        failure_layout.addWidget(self.failure_text, 1)
        failure_layout.addLayout(actions)
        self.failure_box.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.failure_box)
        self.reset()

    def reset(self) -> None:
        for step in FirstRunStep:
            self._set(step, PENDING, "")
        self.failure_box.hide()

    def outcome(self, step: FirstRunStep) -> str:
        return self._outcomes[step]

    def failed_step(self) -> FirstRunStep | None:
        return next((s for s, o in self._outcomes.items() if o == FAILED), None)

    def all_done(self) -> bool:
        return all(o == DONE for o in self._outcomes.values())

    def step_changed(self, step_value: FirstRunStep | str, outcome: str, detail: str) -> None:
        try:
            step = FirstRunStep(step_value)
        except ValueError:
            return  # a step this version does not know: nothing sensible to show
        if outcome == RUNNING:
            # A retry starts over from this step: later steps are pending again.
            steps = list(FirstRunStep)
            for later in steps[steps.index(step) + 1 :]:
                self._set(later, PENDING, "")
            self.failure_box.hide()
        outcome = outcome if outcome in _MARKS else FAILED
        shown = step_detail(step, outcome, detail)
        self._set(step, outcome, shown)
        if outcome == FAILED:
            # The core words most failures for end users; the advice covers a bare or technical one.
            self.failure_text.setText(f"{STEP_LABELS[step]} did not work.\n{shown or FAILURE_ADVICE[step]}")
            self.retry_button.setEnabled(True)
            # Only the provisioning settings can fix a refused registration; elsewhere the button misleads.
            self.settings_button.setVisible(step is FirstRunStep.REGISTER)
            self.failure_box.show()

    def show_general_failure(self, text: str) -> None:
        """A failure outside any one step (e.g. no keyring at all, checked up front)."""
        if self.failed_step() is None:
            self.failure_text.setText(text)
            self.retry_button.setEnabled(True)
            self.settings_button.hide()
            self.failure_box.show()

    def _set(self, step: FirstRunStep, outcome: str, detail: str) -> None:
        self._outcomes[step] = outcome
        glyph, colour = _MARKS[outcome]
        mark = self._marks[step]
        mark.setText(glyph)
        style = f"color: {colour}; font-weight: bold;"
        if mark.styleSheet() != style:  # a new style sheet re-polishes the label: only on a new colour
            mark.setStyleSheet(style)
        mark.setAccessibleName(outcome)
        # A failure is explained once, in the box below the list.
        self._details[step].setText("" if outcome == FAILED else detail)

    def _retry_clicked(self) -> None:
        self.retry_button.setEnabled(False)  # one retry at a time; re-enabled on the next failure
        self.retryRequested.emit()
