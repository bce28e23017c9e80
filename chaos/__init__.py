"""The fault suite (`make chaos`): see chaos.suite."""
