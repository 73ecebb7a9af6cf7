#!/bin/sh
# Example shell agent.
echo "hello from $(uname -n), kernel $(uname -r)"
