// SPDX-License-Identifier: Apache-2.0

// Package bpf holds spiwatch's XDP programs and their compiled objects. The objects
// are generated with bpf2go (make generate) and committed, so building spiwatch
// needs no clang.
package bpf

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Wextra -Werror -mcpu=v3" -go-package bpf Spiwatch spiwatch.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Wextra -Werror -mcpu=v3" -go-package bpf Txgen txgen.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Wextra -Werror -mcpu=v3" -go-package bpf Baseline baseline.c
