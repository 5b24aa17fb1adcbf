"""Train an embedding objective:  python train.py experiment=contrastive_mtl [key=value ...]"""
from utils.entrypoint import launch


def main_task(cfg):
    from utils.training import train

    metrics, _ = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    launch(main_task, "train.yaml")
