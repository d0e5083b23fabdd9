"""Adapter bundles: the file layout, save, load, validation, the hub, push and model cards."""
