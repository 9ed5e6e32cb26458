"""Data: the synthetic click model, raw click logs and their preprocessing, and the batch sources training reads."""
