"""asrquant-search: per-layer mixed precision under a size budget, from dev-split sensitivity
(Hydra; see conf/search.yaml and docs/search.md)."""

import hydra

from asrquant.cli.common import CONF_DIR, run_and_record
from asrquant.runs import run_search, validate_search_config


@hydra.main(config_path=CONF_DIR, config_name="search", version_base="1.3")
def main(cfg) -> None:
    run_and_record(lambda c, run_dir: run_search(validate_search_config(c), run_dir), cfg)


if __name__ == "__main__":
    main()
