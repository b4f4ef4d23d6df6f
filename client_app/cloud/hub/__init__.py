"""Local IoT Hub: device registry, C2D, twins, direct methods, topic routing."""
