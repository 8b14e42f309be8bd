"""What is learned: each objective turns examples into batches and a batch into a loss."""
