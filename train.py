"""Train an omni speech-language model: `python train.py stage=adapter` (see README)."""
import hydra
from omegaconf import DictConfig

from omni.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from omni.train import metric_value, train

    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
