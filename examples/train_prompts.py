"""Stage 3: PPO(-ptx) on prompts. ``--help`` lists the flags; with no flags it runs the built-in
three-stage task (as ``minichatgpt pipeline``)."""

from minichatgpt.recipes.ppo import main

if __name__ == "__main__":
    main()
