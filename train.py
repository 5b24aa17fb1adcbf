"""Train an embedding objective:  python train.py experiment=contrastive_mtl [key=value ...]"""
from utils.entrypoint import launch


def main_task(cfg):
    from utils.entrypoint import is_multirun
    from tasks.train import optimized_metric_value, train

    metrics, _ = train(cfg)
    return optimized_metric_value(cfg, metrics, sweeping=is_multirun())


if __name__ == "__main__":
    launch(main_task, "train.yaml")
