"""The test suite; runs against real Mosquitto brokers."""
