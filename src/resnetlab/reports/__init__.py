"""Reports of run folders: the HTML and Markdown renderer, findings in words and captions."""
