// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Available says whether this kernel can hold ESP states: nil if it can, else why
// not. It asks the kernel itself: in a network namespace of its own, made for the
// purpose on a locked thread and gone when the probe returns (so neither the host's
// SA database nor its listeners, such as charon, ever see it), it adds an ESP state,
// first with AES-CBC + HMAC-SHA256, then with AES-GCM. A kernel without ESP
// (CONFIG_INET_ESP, module esp4) refuses either with EPROTONOSUPPORT; one without
// xfrm netlink (xfrm_user) cannot open the socket. Needs CAP_SYS_ADMIN (a new
// namespace) and CAP_NET_ADMIN (adding the state); without them the answer is the
// permission error, not a guess.
func Available() error {
	errc := make(chan error, 1)
	go func() {
		// The thread ends in the probe namespace and is never unlocked: Go then
		// retires it instead of reusing a thread in the wrong namespace.
		runtime.LockOSThread()
		errc <- probeESP()
	}()
	return <-errc
}

func probeESP() error {
	probe, err := netns.New() // unshare(CLONE_NEWNET): this thread is now in probe
	if err != nil {
		return fmt.Errorf("cannot tell whether this kernel has ESP: making a network namespace for the probe: %w", err)
	}
	defer probe.Close()
	h, err := netlink.NewHandle(unix.NETLINK_XFRM)
	if err != nil {
		return fmt.Errorf("this kernel has no xfrm netlink (CONFIG_XFRM_USER, module xfrm_user): %w", err)
	}
	defer h.Close()
	key := func(n int) []byte {
		k := make([]byte, n)
		for i := range k {
			k[i] = byte(i + 1)
		}
		return k
	}
	base := netlink.XfrmState{
		Src: net.ParseIP("192.0.2.1"), Dst: net.ParseIP("192.0.2.2"), // TEST-NET-1, never routed
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Spi: 0x100,
	}
	cbc := base
	cbc.Crypt = &netlink.XfrmStateAlgo{Name: "cbc(aes)", Key: key(16)}
	cbc.Auth = &netlink.XfrmStateAlgo{Name: "hmac(sha256)", Key: key(32), TruncateLen: 128}
	gcm := base
	gcm.Aead = &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: key(20), ICVLen: 128}
	var first error
	for _, st := range []*netlink.XfrmState{&cbc, &gcm} {
		err := h.XfrmStateAdd(st)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	switch {
	case errors.Is(first, unix.EPROTONOSUPPORT):
		return fmt.Errorf("this kernel has no ESP (CONFIG_INET_ESP, module esp4): adding an ESP state: %w", first)
	case errors.Is(first, unix.EPERM):
		return fmt.Errorf("cannot tell whether this kernel has ESP: adding a probe state needs CAP_NET_ADMIN: %w", first)
	}
	return fmt.Errorf("this kernel cannot hold ESP states: adding one failed: %w", first)
}
