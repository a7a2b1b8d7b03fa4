"""python -m r1: the whole R1 pipeline in miniature (r1/pipeline.py)."""

from r1.pipeline import main

if __name__ == "__main__":
    main()
