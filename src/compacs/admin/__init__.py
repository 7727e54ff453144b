"""What the admin commands do, apart from the running node: each module returns reports
that ``compacs.cli`` prints.

- :mod:`.compress`: ``compacs compress`` (stored objects through the policy or the
  archive tier);
- :mod:`.verify`: ``compacs verify`` (objects against the index, digests, decodes);
- :mod:`.reindex`: ``compacs reindex`` (the index rebuilt from the stored objects);
- :mod:`.gateway`: ``compacs forward``, ``queue``, ``delete``;
- :mod:`.console`: the terminal while a progress bar is live, and the bar.
"""
