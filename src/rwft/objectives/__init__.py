"""Pure math of the objectives: weights from rewards and losses on tensors. Imports nothing else of rwft."""
