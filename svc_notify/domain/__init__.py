"""Rules of the notification context: who is told what, in which words, when."""
