"""Pipeline stages as plain functions (collect, caption, describe, ...), each reading the previous stage's files."""
