"""AMQP 1.0 service endpoints of the local cloud (python-qpid-proton): C2D sends with feedback on a thread of
the cloud (`bridge` hands work between it and the cloud's asyncio loop), and the Event Hubs-compatible
telemetry endpoint in a process of its own (`eventhubs_process`), as `service` starts them."""
