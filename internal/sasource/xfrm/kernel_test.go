// SPDX-License-Identifier: Apache-2.0

//go:build linux && vmtest

// Tests against a kernel that holds ESP states. This machine's kernel has none, so
// make test-vm builds these (go test -c -tags vmtest) into a VM running Debian's
// kernel; see docs/VMTEST.md.

package xfrm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

var (
	peer4  = frames.DefaultSrc4 // the sender's end
	local4 = frames.DefaultDst4 // ours: on the monitored veth
	peer6  = frames.DefaultSrc6
	local6 = frames.DefaultDst6 // ours: on lo (the lab turns IPv6 off on the veths)
)

// sa describes a state to install.
type sa struct {
	src, dst netip.Addr
	spi      uint32
	encap    bool
	hardSecs uint64 // hard lifetime; 0: none
}

func (s sa) state() *netlink.XfrmState {
	key := make([]byte, 20)
	for i := range key {
		key[i] = byte(s.spi) + byte(i)
	}
	st := &netlink.XfrmState{
		Src: net.IP(s.src.AsSlice()), Dst: net.IP(s.dst.AsSlice()),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Spi: int(s.spi),
		Aead: &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: key, ICVLen: 128},
	}
	if s.encap {
		st.Encap = &netlink.XfrmStateEncap{Type: netlink.XFRM_ENCAP_ESPINUDP, SrcPort: 4500, DstPort: 4500}
	}
	if s.hardSecs > 0 {
		st.Limits = netlink.XfrmStateLimits{TimeHard: s.hardSecs, ByteSoft: ^uint64(0), ByteHard: ^uint64(0), PacketSoft: ^uint64(0), PacketHard: ^uint64(0)}
	}
	return st
}

func (s sa) known() maps.SA { return maps.SA{SPI: s.spi, Dst: s.dst} }

// frame is a packet of this SA as the peer sends it.
func (s sa) frame(seq uint32) []byte {
	f := frames.Frame{Src: s.src, Dst: s.dst}
	if s.encap {
		return f.ESPInUDP(4500, 4500, s.spi, seq, 64)
	}
	return f.ESP(s.spi, seq, 64)
}

// newNS makes a network namespace with lo up and our addresses on it.
func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	t.Cleanup(func() { ns.Close() })
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", []byte("0"), 0); err != nil {
		t.Logf("enabling IPv6 on lo: %v", err) // a fresh namespace usually has it on
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{local4, local6} {
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}); err != nil {
			t.Fatalf("adding %s to lo: %v", a, err)
		}
	}
	return ns
}

// rec is the sink and reporter of a source under test.
type rec struct {
	mu      sync.Mutex
	sets    [][]maps.SA
	notices []string
	errs    []error
	next    func([]maps.SA) error
}

func (r *rec) sink(sas []maps.SA) error {
	r.mu.Lock()
	r.sets = append(r.sets, sas)
	r.mu.Unlock()
	if r.next != nil {
		return r.next(sas)
	}
	return nil
}
func (r *rec) Synced(string, int) {}
func (r *rec) Failed(_ string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}
func (r *rec) Notice(_, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notices = append(r.notices, msg)
}
func (r *rec) last() []maps.SA {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil
	}
	return r.sets[len(r.sets)-1]
}

func sortSAs(s []maps.SA) []maps.SA {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b maps.SA) int {
		if a.SPI != b.SPI {
			return int(int64(a.SPI) - int64(b.SPI))
		}
		return a.Dst.Compare(b.Dst)
	})
	return s
}

// eventually polls cond for up to 15 s (TCG on a busy machine is slow).
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 15 s; now %s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The whole chain on a real kernel: xfrm states added and removed with netlink,
// the source, knownset, the known-SA map, the XDP program on a veth, and traffic.
// kernelLab is a namespace lab with the classifier on the monitored end (NSB, which
// holds local4 on the veth and local6 on lo), a generator on the other, and an xfrm
// netlink handle in NSB.
type kernelLab struct {
	lab    *netlab.Lab
	nsB    netns.NsHandle
	objs   *loader.Objects
	sender *trafficgen.Sender
	xh     *netlink.Handle
}

func newKernelLab(t *testing.T, settings loader.Settings) *kernelLab {
	t.Helper()
	testenv.RequireNetns(t)
	if err := Available(); err != nil {
		t.Fatalf("this test needs a kernel with ESP: %v", err)
	}
	lab, err := netlab.New("swvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	k := &kernelLab{lab: lab}
	if k.nsB, err = netns.GetFromName(lab.NSB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.nsB.Close() })

	// Addresses of the monitored side: IPv4 on the veth, IPv6 on lo.
	if err := netlab.In(lab.NSB, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", []byte("0"), 0); err != nil {
			return err
		}
		mon, err := netlink.LinkByName(lab.Receiver)
		if err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(mon, &netlink.Addr{IPNet: &net.IPNet{IP: local4.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return fmt.Errorf("adding %s: %w", local4, err)
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: local6.AsSlice(), Mask: net.CIDRMask(128, 128)}})
	}); err != nil {
		t.Fatal(err)
	}

	if k.objs, err = loader.Load(settings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.objs.Close() })
	if err := netlab.In(lab.NSB, func() error {
		_, err := k.objs.Attach(lab.Receiver, loader.ModeAuto, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := netlab.In(lab.NSA, func() (err error) {
		k.sender, err = trafficgen.NewSender(lab.Sender, trafficgen.Vary{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.sender.Close() })
	if k.xh, err = netlink.NewHandleAt(k.nsB, unix.NETLINK_XFRM); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.xh.Close)
	return k
}

func (k *kernelLab) send(t *testing.T, s sa, n int) {
	t.Helper()
	if err := k.sender.Send(s.frame(1), n); err != nil {
		t.Fatalf("sending %d packets of SPI %#x: %v", n, s.spi, err)
	}
}

func (k *kernelLab) add(t *testing.T, ss ...sa) {
	t.Helper()
	for _, s := range ss {
		if err := k.xh.XfrmStateAdd(s.state()); err != nil {
			t.Fatalf("adding ESP state %#x %s -> %s: %v", s.spi, s.src, s.dst, err)
		}
	}
}

// allocSPI reserves an SPI for peer4 -> local4 in NSB as strongSwan does before
// it installs an inbound SA (XFRM_MSG_ALLOCSPI: a larval state).
func (k *kernelLab) allocSPI(t *testing.T) uint32 {
	t.Helper()
	var spi uint32
	err := netlab.In(k.lab.NSB, func() error {
		x, err := netlink.XfrmStateAllocSpi(&netlink.XfrmState{Src: net.IP(peer4.AsSlice()), Dst: net.IP(local4.AsSlice()),
			Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL})
		if err == nil {
			spi = uint32(x.Spi)
		}
		return err
	})
	if err != nil {
		t.Fatalf("ALLOCSPI in %s: %v", k.lab.NSB, err)
	}
	return spi
}

func (k *kernelLab) wantCount(t *testing.T, what string, cl classify.Class, o classify.Outcome, n uint64) {
	t.Helper()
	eventually(t, what, func() (bool, string) {
		c, err := k.objs.Maps.Counters(0)
		if err != nil {
			return false, err.Error()
		}
		return c[cl][o].Packets == n, fmt.Sprintf("%s/%s: %d packets, want %d", cl, o, c[cl][o].Packets, n)
	})
}

// The whole chain on a real kernel: xfrm states added and removed with netlink,
// the source, knownset, the known-SA map, the XDP program on a veth, and traffic.
func TestKernelLab(t *testing.T) {
	k := newKernelLab(t, loader.Settings{})
	objs, xh, nsB := k.objs, k.xh, k.nsB
	send := func(s sa, n int) { t.Helper(); k.send(t, s, n) }

	set := knownset.New(objs.Maps, knownset.DefaultHistory, knownset.DefaultRekeyGrace)
	add := func(ss ...sa) { t.Helper(); k.add(t, ss...) }
	wantKnown := func(what string, ss ...sa) {
		t.Helper()
		var want []maps.SA
		for _, s := range ss {
			want = append(want, s.known())
		}
		want = sortSAs(want)
		eventually(t, what, func() (bool, string) {
			ks, err := objs.Maps.ListKnown()
			if err != nil {
				return false, err.Error()
			}
			var got []maps.SA
			for _, k := range ks {
				got = append(got, k.SA)
			}
			got = sortSAs(got)
			return slices.Equal(got, want), fmt.Sprintf("known %v, want %v", got, want)
		})
	}
	wantCount := func(what string, cl classify.Class, o classify.Outcome, n uint64) {
		t.Helper()
		k.wantCount(t, what, cl, o, n)
	}
	verdict := func(spi uint32) string {
		t.Helper()
		rows, err := objs.Maps.UnknownSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.SPI == spi {
				return set.Verdict(spi, r.Dst, report.MonoToWall(r.FirstSeenNs), report.MonoToWall(r.LastSeenNs))
			}
		}
		t.Fatalf("no unknown-SPI row for %#x", spi)
		return ""
	}

	sa1 := sa{src: peer4, dst: local4, spi: 0x1001}              // plain v4, there before the start
	sa2 := sa{src: peer4, dst: local4, spi: 0x2002, encap: true} // ESP-in-UDP v4
	sa3 := sa{src: peer6, dst: local6, spi: 0x3003}              // plain v6
	sa4 := sa{src: peer6, dst: local6, spi: 0x4004, encap: true} // ESP-in-UDP v6
	out5 := sa{src: local4, dst: peer4, spi: 0x5005}             // outbound: never known
	in5 := sa{src: peer4, dst: local4, spi: 0x5005}              // the peer sending on our outbound SPI
	sa6 := sa{src: peer4, dst: local4, spi: 0x6006}              // installed after its first packets
	sa7 := sa{src: peer4, dst: local4, spi: 0x7007, hardSecs: 2} // hard-expires
	add(sa1)

	r := &rec{next: func(sas []maps.SA) error { return set.Update("xfrm", sas) }}
	src := New(Options{NetNS: nsB})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Now()
	if err := src.Start(ctx, r.sink, r); err != nil {
		t.Fatal(err)
	}
	wantKnown("the dump at start", sa1)

	add(sa2, sa3, sa4, out5)
	wantKnown("after NEWSA of three inbound and one outbound state", sa1, sa2, sa3, sa4)
	t.Logf("states to known SAs: %v after the first add (including start)", time.Since(t0))

	for _, s := range []sa{sa1, sa2, sa3, sa4, in5} {
		send(s, 10)
	}
	wantCount("plain ESP known", classify.ClassESP, classify.OutcomeKnown, 20)
	wantCount("ESP-in-UDP known", classify.ClassESPInUDP, classify.OutcomeKnown, 20)
	wantCount("ESP on the outbound SPI unknown", classify.ClassESP, classify.OutcomeUnknown, 10)
	ks, err := objs.Maps.ListKnown()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if k.Packets != 10 {
			t.Errorf("known SA %s: %d packets, want 10", k.SA, k.Packets)
		}
	}
	if v := verdict(0x5005); v != knownset.Unknown {
		t.Errorf("SPI of an outbound state: verdict %s, want %s", v, knownset.Unknown)
	}

	// Rekey race: packets first, the SA a moment later.
	send(sa6, 5)
	wantCount("SPI 0x6006 before its SA", classify.ClassESP, classify.OutcomeUnknown, 15)
	add(sa6)
	wantKnown("after NEWSA 0x6006", sa1, sa2, sa3, sa4, sa6)
	if v := verdict(0x6006); v != knownset.RekeyRace {
		t.Errorf("SPI installed after its first packets: verdict %s, want %s", v, knownset.RekeyRace)
	}

	// strongSwan's kernel-netlink way: reserve an SPI (ALLOCSPI makes a larval
	// state, on which the kernel drops ESP), then install the SA on it (UPDSA).
	sa8 := sa{src: peer4, dst: local4, spi: k.allocSPI(t)}
	time.Sleep(300 * time.Millisecond) // time for a wrong set to show
	wantKnown("after ALLOCSPI (a larval state is not an SA)", sa1, sa2, sa3, sa4, sa6)
	if err := xh.XfrmStateUpdate(sa8.state()); err != nil {
		t.Fatalf("UPDSA of the reserved SPI %#x: %v", sa8.spi, err)
	}
	wantKnown("after UPDSA of the reserved SPI", sa1, sa2, sa3, sa4, sa6, sa8)
	if err := xh.XfrmStateDel(sa8.state()); err != nil {
		t.Fatal(err)
	}
	wantKnown("after DELSA of it", sa1, sa2, sa3, sa4, sa6)

	// Stale: delete an SA, the peer keeps sending on it.
	if err := xh.XfrmStateDel(sa1.state()); err != nil {
		t.Fatal(err)
	}
	wantKnown("after DELSA 0x1001", sa2, sa3, sa4, sa6)
	send(sa1, 3)
	wantCount("SPI 0x1001 after its delete", classify.ClassESP, classify.OutcomeUnknown, 18)
	if v := verdict(0x1001); v != knownset.Stale {
		t.Errorf("SPI of a deleted SA: verdict %s, want %s", v, knownset.Stale)
	}

	// Hard expire: the kernel deletes the state and sends only EXPIRE.
	add(sa7)
	wantKnown("after NEWSA 0x7007", sa2, sa3, sa4, sa6, sa7)
	wantKnown("after the hard expire of 0x7007", sa2, sa3, sa4, sa6)
	send(sa7, 2)
	wantCount("SPI 0x7007 after its expire", classify.ClassESP, classify.OutcomeUnknown, 20)
	if v := verdict(0x7007); v != knownset.Stale {
		t.Errorf("SPI of an expired SA: verdict %s, want %s", v, knownset.Stale)
	}

	// Flush: one FLUSHSA message, every state gone.
	if err := xh.XfrmStateFlush(netlink.XFRM_PROTO_ESP); err != nil {
		t.Fatal(err)
	}
	wantKnown("after FLUSHSA")
	send(sa2, 4)
	wantCount("ESP-in-UDP after the flush", classify.ClassESPInUDP, classify.OutcomeUnknown, 4)

	// An SA to an address this host does not have yet (a VIP that moves here on
	// failover): known while the address is ours, not before or after.
	vip := sa{src: peer4, dst: netip.MustParseAddr("192.0.2.3"), spi: 0x3333}
	add(vip)
	time.Sleep(300 * time.Millisecond) // time for a wrong set to show
	wantKnown("an SA to an address not ours yet")
	rh, err := netlink.NewHandleAt(nsB, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer rh.Close()
	lo, err := rh.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	vipAddr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.dst.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := rh.AddrAdd(lo, vipAddr); err != nil {
		t.Fatal(err)
	}
	wantKnown("after the address came", vip)
	if err := rh.AddrDel(lo, vipAddr); err != nil {
		t.Fatal(err)
	}
	wantKnown("after the address went")

	st := src.Stats()
	if st.Resyncs != 0 || st.Errors != 0 || !st.Connected || st.SAs != 0 {
		t.Errorf("stats %+v: want no resyncs or errors, connected, 0 SAs", st)
	}
	r.mu.Lock()
	t.Logf("%d sets handed on", len(r.sets))
	if len(r.errs) > 0 {
		t.Errorf("reported errors: %v", r.errs)
	}
	r.mu.Unlock()
}

// A burst of events while the loop is stalled overruns a tiny socket buffer: the
// kernel drops events (ENOBUFS), the source says so, counts a resync, dumps again,
// and ends with exactly the states there are.
func TestKernelResyncAfterOverrun(t *testing.T) {
	testenv.RequireBPF(t)
	if err := Available(); err != nil {
		t.Fatalf("this test needs a kernel with ESP: %v", err)
	}
	ns := newNS(t)
	xh, err := netlink.NewHandleAt(ns, unix.NETLINK_XFRM)
	if err != nil {
		t.Fatal(err)
	}
	defer xh.Close()

	release := make(chan struct{})
	var once sync.Once
	src := New(Options{NetNS: ns, RcvBuf: 1}) // the kernel rounds it up to its minimum, a few messages
	src.beforeReceive = func() { <-release }
	r := &rec{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer once.Do(func() { close(release) })
	if err := src.Start(ctx, r.sink, r); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var want []maps.SA
	for i := range n {
		s := sa{src: peer4, dst: local4, spi: 0x10000 + uint32(i), encap: i%2 == 1}
		if i%3 == 0 {
			s = sa{src: peer6, dst: local6, spi: 0x10000 + uint32(i)}
		}
		if err := xh.XfrmStateAdd(s.state()); err != nil {
			t.Fatal(err)
		}
		want = append(want, s.known())
	}
	// and one outbound state, which the resync must leave out too
	if err := xh.XfrmStateAdd(sa{src: local4, dst: peer4, spi: 0x9999}.state()); err != nil {
		t.Fatal(err)
	}
	once.Do(func() { close(release) })
	want = sortSAs(want)
	eventually(t, "the full set after the overrun", func() (bool, string) {
		got := sortSAs(r.last())
		return slices.Equal(got, want) && src.Stats().Resyncs > 0,
			fmt.Sprintf("%d SAs, %d resyncs", len(got), src.Stats().Resyncs)
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.ContainsFunc(r.notices, func(s string) bool { return strings.Contains(s, "dropped xfrm events") }) {
		t.Errorf("notices %q: want one saying events were dropped", r.notices)
	}
	t.Logf("resyncs %d, notices %q", src.Stats().Resyncs, r.notices)
}

// The kfunc option on a real kernel with ESP: from 6.8 on, an SA the kernel holds and
// the map does not counts as known (no xfrm source runs here); before 6.8 the option
// reports unsupported and the program works as without it.
func TestKernelXfrmLookup(t *testing.T) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", release, err)
	}
	has := major > 6 || major == 6 && minor >= 8
	k := newKernelLab(t, loader.Settings{XfrmLookup: true})
	off := k.objs.XfrmLookupOff
	t.Logf("Linux %s: XfrmLookupSupported %v; option on: %v, reason off: %v", release, loader.XfrmLookupSupported(), k.objs.Settings.XfrmLookup, off)
	if has != (off == nil) || has != k.objs.Settings.XfrmLookup {
		t.Fatalf("Linux %s: option in effect %v (reason off: %v), want %v", release, k.objs.Settings.XfrmLookup, off, has)
	}
	inV4 := sa{src: peer4, dst: local4, spi: 0x8008}
	inV6 := sa{src: peer6, dst: local6, spi: 0x8009, encap: true}
	outV4 := sa{src: local4, dst: peer4, spi: 0x800a} // outbound: the kernel's lookup by our address misses it
	none := sa{src: peer4, dst: local4, spi: 0x800b}  // no SA at all
	k.add(t, inV4, inV6, outV4)
	k.send(t, inV4, 5)
	k.send(t, inV6, 4)
	k.send(t, sa{src: peer4, dst: local4, spi: outV4.spi}, 3)
	k.send(t, none, 2)
	// A reserved SPI (ALLOCSPI, larval): in the kernel's SPI table, but the kernel
	// drops ESP on it as an invalid state, so it is not known.
	k.send(t, sa{src: peer4, dst: local4, spi: k.allocSPI(t)}, 6)
	if has {
		k.wantCount(t, "ESP of a kernel SA", classify.ClassESP, classify.OutcomeKnown, 5)
		k.wantCount(t, "ESP-in-UDP of a kernel SA", classify.ClassESPInUDP, classify.OutcomeKnown, 4)
		k.wantCount(t, "ESP without an inbound SA or on a larval state", classify.ClassESP, classify.OutcomeUnknown, 11)
	} else {
		k.wantCount(t, "ESP, the map empty", classify.ClassESP, classify.OutcomeUnknown, 16)
		k.wantCount(t, "ESP-in-UDP, the map empty", classify.ClassESPInUDP, classify.OutcomeUnknown, 4)
	}
	if ks, err := k.objs.Maps.ListKnown(); err != nil || len(ks) != 0 {
		t.Errorf("known-SA map: %v, %v; want it empty (nothing fills it here)", ks, err)
	}
}
