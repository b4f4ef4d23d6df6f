"""Local Device Provisioning Service: registration, enrollments, CA certificates, allocation."""
