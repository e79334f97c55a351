"""Evaluate a checkpoint: `python eval.py ckpt=logs/train/runs/.../checkpoints/multimodal/last.ckpt`."""
import hydra
from omegaconf import DictConfig

from omni.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from omni.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
