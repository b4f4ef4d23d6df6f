"""AMQP 1.0 service endpoint of the local cloud (python-qpid-proton): C2D sends with feedback and the
Event Hubs-compatible telemetry endpoint. It runs on a thread of its own; `bridge` hands work between it
and the cloud's asyncio loop."""
