module channel-contracts.dev/e2e/tools/lua

go 1.26.7

require github.com/yuin/gopher-lua v1.1.2
