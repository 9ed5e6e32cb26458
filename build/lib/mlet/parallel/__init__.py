"""Several processes under torchrun: table sharding, the embedding all-to-all, process groups and shared errors."""
