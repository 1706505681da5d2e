"""Stage 1: supervised fine-tuning. ``python examples/train_sft.py --help`` lists the flags; with no
flags it fine-tunes the built-in tiny model on the built-in demonstrations."""

from minichatgpt.recipes.sft import main

if __name__ == "__main__":
    main()
