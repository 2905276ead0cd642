#!/usr/bin/env sh
# Seed 001: ResNet-18 on CIFAR-10 at 32 px, read by torchvision as the article reads it,
# every layer trained, SGD lr 0.001 momentum 0.9, batch 100, 10 epochs. A fifth of the
# training split is held out for validation (--val-split); CIFAR-10's test split is
# evaluated once at the end (test_acc in summary.json).
#
#   ROOT=./data sh examples/001_resnet18_cifar32.sh [more tlplug run options]
#
# ROOT holds cifar-10-batches-py/ as torchvision downloads it; to fetch it there, add
# --data-opt download=true. DATA=./cifar10 (class folders) is read instead when given.
#
# Fixed on the way: the article loads a pretrained ResNet-18 and then trains a small network
# from scratch instead; here the pretrained ResNet-18 is what trains. Inputs are normalized
# with the backbone's own ImageNet mean/std, not (0.5, 0.5, 0.5).
set -e
exec tlplug run --data "${DATA:-torchvision:CIFAR10:${ROOT:-./data}}" \
  --backbone torchvision:resnet18 --img-size 32 \
  --schedule full --optimizer sgd --lr 0.001 --momentum 0.9 --weight-decay 0 \
  --lr-schedule constant --batch-size 100 --epochs 10 --augment none \
  "$@"
