"""Command-line interface: ``latentdiff {train,sample,eval,demo,presets}``."""
