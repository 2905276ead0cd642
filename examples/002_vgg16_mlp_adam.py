"""Seed 002: VGG-16 with the convolutional layers frozen and a new 3-layer classifier
(25088 -> 4096 -> 4096 -> classes, ReLU and dropout 0.5), trained with Adam.

    python examples/002_vgg16_mlp_adam.py --data ./cats-vs-dogs [--epochs 5]

``pre_logits=False`` drops VGG's own 4096-wide fc layers so the new head sees the 25088
pooled conv features, as in the article. Fixed on the way: inputs are normalized with the
backbone's ImageNet mean/std rather than 0.5, and the imports the article forgot are here.
"""

import argparse

from tlplug import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="./data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    args = parser.parse_args()

    engine = Engine.from_plugins(
        backbone="torchvision:vgg16",
        backbone_opts={"pre_logits": False},
        head="mlp",
        head_opts={"hidden": (4096, 4096), "dropout": 0.5},
        schedule="linear-probe",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        lr_schedule="constant",
        augment=(),
        pretrained=args.pretrained,
        img_size=args.img_size,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    result = engine.fit(args.data, epochs=args.epochs, out=args.out)
    print(f"best val_acc {result.best_val_acc:.4f} -> {result.run_dir}")


if __name__ == "__main__":
    main()
