"""Local stand-ins for online services, driven by the real client libraries in tests."""
