"""Operator side: Azure-shaped service REST (IoT Hub, DPS, ARM), its client, the HTTP server."""
