"""Doctor appointment booking API."""
