"""Raw click logs as downloaded (Criteo-Kaggle, Avazu): readers, generators, vocabularies, the processed cache."""
