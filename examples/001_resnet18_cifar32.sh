#!/usr/bin/env sh
# Seed 001: ResNet-18 on 32 px CIFAR-style images (DATA/train/<class>/, DATA/val/<class>/),
# every layer trained, SGD lr 0.001 momentum 0.9, batch 100, 10 epochs.
#
#   DATA=./cifar10 sh examples/001_resnet18_cifar32.sh [more tlplug run options]
#
# Fixed on the way: the article loads a pretrained ResNet-18 and then trains a small network
# from scratch instead; here the pretrained ResNet-18 is what trains. Inputs are normalized
# with the backbone's own ImageNet mean/std, not (0.5, 0.5, 0.5).
set -e
exec tlplug run --data "${DATA:-./cifar10}" \
  --backbone torchvision:resnet18 --img-size 32 \
  --schedule full --optimizer sgd --lr 0.001 --momentum 0.9 --weight-decay 0 \
  --lr-schedule constant --batch-size 100 --epochs 10 --augment none \
  "$@"
