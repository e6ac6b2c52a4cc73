"""Drop-in reward functions for the RL frameworks people train generators and VLMs with, one module each:

    unifiedreward.clients.integrations.flow_grpo   unifiedreward_score(device) -> fn(images, prompts, metadata) -> (scores, info)
    unifiedreward.clients.integrations.verl_omni   async compute_score(data_source, solution_image, ground_truth, extra_info, ...)
    unifiedreward.clients.integrations.trl         reward_func(...) -> an async reward function for GRPOTrainer(reward_funcs=[...])
    unifiedreward.clients.integrations.groups      win_rate_rewards(images, caption) -> one GRPO group's rewards (Pref-GRPO)

Unlike the glue these frameworks ship, a failed or unparsed answer is never a 0.0, 0.5 or batch mean: by
default the item's error is raised (after the client's retries); `on_error` makes it NaN (flow_grpo,
groups) or None (TRL's own "not applicable"), and the failure is then visible in `info` or the log.
Nothing heavy is imported here: torch only when the caller hands over a tensor.
"""
