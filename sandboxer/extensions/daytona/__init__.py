"""ext.daytona: hosted sandboxes at Daytona (docs/ext-daytona.md)."""
