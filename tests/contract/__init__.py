"""The adapter contract (tests/test_adapter_contract.py): one driver per platform, same interface."""
