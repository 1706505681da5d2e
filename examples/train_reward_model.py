"""Stage 2: reward-model training on preference pairs. ``--help`` lists the flags; with no flags it
trains the built-in tiny reward model on the built-in pairs."""

from minichatgpt.recipes.rm import main

if __name__ == "__main__":
    main()
