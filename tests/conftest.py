import os
from pathlib import Path

import pytest

# Qt must pick its platform before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest_plugins = [
    "tests.fixtures.secret_service",
    "tests.fixtures.cloud",
    "tests.fixtures.x_display",
    "tests.fixtures.node",
]

# The slow tests, in one place: `uv run pytest -m "not slow"` leaves them out (README, docs/architecture.md);
# `uv run pytest` runs them too. Slow = seconds each: builds, the demo, the 1,000-client swarm, soak and flood
# tests, end-to-end runs through subprocesses, Event Hubs readers that wait for their receive timeouts.
SLOW_MODULES = {
    "tests/packaging/test_build.py": "a PyInstaller build (about a minute) and runs of the frozen app",
    "tests/gui/test_demo.py": "the demo's processes, each with its own local cloud",
    "tests/gui/test_desktop.py": "the app in a subprocess on a real X display",
    "tests/gui/test_app_integration.py": "the whole app against a local cloud, end to end",
    "tests/device/test_e2e_basic.py": "long end-to-end runs of the device against a local cloud",
    "tests/device/test_e2e_identity.py": "long end-to-end runs of the device against a local cloud",
    "tests/device/test_e2e_recovery.py": "long end-to-end runs of the device against a local cloud",
    "tests/device/test_loopback_only.py": "end-to-end runs of the device, one as a subprocess",
    "tests/device/test_keyring_timeout.py": "a second Secret Service per test and a wait for its timeout",
    "tests/cloud/mqtt/test_scale.py": "the 1,000-client swarm",
}
SLOW_TESTS = {  # module -> test functions (all their parameters) that take a second or more on 2 cores
    "tests/cloud/test_allocation_webhook.py": {"test_shipped_webhook_through_the_local_dps"},
    "tests/cloud/test_amqp_cli.py": {
        "test_send_by_connection_string_with_ack_and_feedback_record",
        "test_telemetry_follow_reads_the_event_hubs_endpoint",
        "test_consumer_groups_added_by_the_operator_are_readable",
        "test_expired_message_with_negative_ack_comes_back_as_feedback",
    },
    "tests/cloud/test_amqp_sdk.py": {
        "test_send_c2d_message_reaches_the_device_with_its_properties",
        "test_c2d_refused_without_a_valid_service_token",
        "test_c2d_refusals_unknown_device_oversize_and_queue_full",
        "test_event_hub_consumer_reads_telemetry_from_start_sequence_number_and_latest",
        "test_event_hub_properties_and_consumer_group_checks",
        "test_event_hub_consumer_resumes_after_restart_without_loss_or_duplicates",
        "test_event_hub_refuses_expired_and_foreign_tokens",
    },
    "tests/cloud/test_cli.py": {"test_operator_workflow", "test_serve_foreground_process"},
    "tests/cloud/test_refusals.py": {"test_requests_without_reading_answers_are_held_back"},
    "tests/cloud/test_server.py": {
        "test_restart_keeps_everything",
        "test_assignment_delay_answers_assigning_then_assigned",
        "test_telemetry_store_keeps_up",
    },
    "tests/cloud/test_service_api.py": {
        "test_registry_manager_drives_a_real_device",
        "test_refusals_with_azures_codes",
        "test_method_timeout_is_504101",
    },
    "tests/cloud/mqtt/test_fuzz.py": {
        "test_valid_stream_round_trips_in_any_split",
        "test_mutated_and_truncated_packets",
    },
    "tests/device/test_cli.py": {
        "test_killed_process_delivers_its_outbox_on_next_start",
        "test_no_keyring_is_a_clear_error_state",
    },
    "tests/device/test_identity.py": {"test_keyring_round_trip_and_lock"},
    "tests/gui/test_widgets.py": {"test_first_run_progress_and_failure_with_retry"},
    "tests/pki/test_names.py": {"test_accepts_exactly_the_dps_alphabet"},
    "tests/pki/test_oracles.py": {"test_rsa_4096_device_key"},
    "tests/test_keyring_fixture.py": {"test_locked_collection_refuses"},
}


# Tests that leave the local cloud as they found it (refusals, reads) share one per module (marker
# `shared_cloud`, tests/fixtures/cloud.py); a test that changes the cloud's state keeps its own.
SHARED_CLOUD_TESTS = {
    "tests/cloud/test_http_hardening.py": {
        "test_bad_input_is_4xx_before_and_after_authentication",
        "test_certificate_names_follow_azures_rules",
    },
    "tests/cloud/test_amqp_sdk.py": {
        "test_development_emulator_connection_string_reaches_plain_amqp",
        "test_garbage_costs_only_its_own_connection",
    },
}


QUICK_LOOP_WORKERS = 4  # on 2 cores: half of the fast tests' time is waiting (clouds, handshakes, Node)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads -n
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The quick loop, `uv run pytest -m "not slow"`, runs on several workers unless `-n` says otherwise;
    the whole suite (README's command, CI) stays in one process, where the timing-sensitive slow tests
    have the machine to themselves."""
    quick = (config.option.markexpr or "").split() == ["not", "slow"]
    if quick and config.option.numprocesses is None and not hasattr(config, "workerinput"):
        config.option.numprocesses = QUICK_LOOP_WORKERS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared_cloud: shares its module's local cloud, changes nothing")


def _marked(path: str, name: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if path in SLOW_MODULES or name in SLOW_TESTS.get(path, ()) else []
    return marks + ([pytest.mark.shared_cloud] if name in SHARED_CLOUD_TESTS.get(path, ()) else [])


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(config.rootpath)
    listed = {path: SLOW_TESTS.get(path, set()) | SHARED_CLOUD_TESTS.get(path, set())
              for path in [*SLOW_TESTS, *SHARED_CLOUD_TESTS]}  # fmt: skip
    missing = [path for path in [*SLOW_MODULES, *listed] if not (root / path).is_file()]
    modules = {}
    for item in items:
        path = item.path.relative_to(root).as_posix()
        for mark in _marked(path, getattr(item, "originalname", item.name)):
            item.add_marker(mark)
        if path in listed and isinstance(item, pytest.Function):
            modules[path] = item.module
    missing += [f"{path}::{name}" for path, module in modules.items() for name in listed[path]
                if not hasattr(module, name)]  # fmt: skip
    if missing:  # a moved or renamed slow test must not silently join the fast run
        raise pytest.UsageError(f"tests/conftest.py names tests that do not exist: {', '.join(missing)}")
