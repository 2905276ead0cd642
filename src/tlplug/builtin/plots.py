"""Plots in every run directory: training curves, the confusion matrix, the schedule."""
