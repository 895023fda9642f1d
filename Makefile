# Shortcuts for the scripts the README documents.
.PHONY: main test
main:
	bash scripts/main.sh
test:
	bash scripts/test.sh
