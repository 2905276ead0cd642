#!/usr/bin/env sh
# Seed 000: a pretrained ResNet-50; train a new fc for 10 epochs, then fc + layer4 for 10 more,
# with SGD (lr 0.001, momentum 0.9), batch 32, Resize(256) + CenterCrop(224), ImageNet stats.
#
#   DATA=./my-images sh examples/000_resnet50_fc_then_layer4.sh [more tlplug run options]
#
# Fixed on the way: the frozen layers' BatchNorm statistics no longer drift while "frozen"
# (the article leaves the whole model in train mode); the optimizer is not rebuilt at the
# unfreeze, so fc keeps its momentum; validation runs every epoch and the best weights are kept.
set -e
exec tlplug run --data "${DATA:-./data}" \
  --backbone torchvision:resnet50 --head linear \
  --schedule milestones --schedule-opt at=10 --epochs 20 \
  --optimizer sgd --lr 0.001 --momentum 0.9 --weight-decay 0 --lr-schedule constant \
  --batch-size 32 --img-size 224 --augment none \
  "$@"
