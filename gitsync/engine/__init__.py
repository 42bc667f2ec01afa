"""Engine: plan, apply in order, prune, keep the inventory, roll back."""
