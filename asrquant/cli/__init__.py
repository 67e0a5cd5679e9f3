"""Thin command-line entry points. Nothing in the package imports this.

Importing it registers the `asrquant_dirname` resolver that conf/hydra/default.yaml names
sweep members' folders with (their overrides less every path)."""

from omegaconf import OmegaConf

from asrquant.report.runs import folder_overrides

OmegaConf.register_new_resolver("asrquant_dirname", lambda task: folder_overrides(task),
                                replace=True)
