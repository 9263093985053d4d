"""Real parts for end-to-end tests: a Postfix instance and a milter process."""
