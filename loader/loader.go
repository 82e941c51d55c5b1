// SPDX-License-Identifier: Apache-2.0

// Package loader owns the lifetime of spiwatch's kernel objects: it loads the
// committed BPF object with its load-time settings, creates one program instance per
// interface (all sharing one set of maps), attaches and detaches them.
package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// Defaults and limits of the load-time settings.
const (
	DefaultNATTPort   = 4500
	MaxNATTPorts      = 8
	DefaultKnownMax   = 65536
	DefaultUnknownMax = 65536
	// DefaultICMPMax and DefaultIKEMax are the sizes of the ICMP-error and IKE
	// tables (ICMP_MAX, IKE_MAX in bpf/spiwatch.c).
	DefaultICMPMax = 4096
	DefaultIKEMax  = 16384
	DefaultRateMax = 65536
	MaxDropAbove   = 1_000_000_000 // packets per second: a 1 ns token cost
	progName       = "spiwatch_xdp"
)

// Settings are fixed when the object is loaded.
type Settings struct {
	NATTPorts   []uint16 // empty: {4500}
	DropUnknown bool     // XDP_DROP packets with an unknown SPI
	// DropAbove, with DropUnknown, drops a source address's unknown-SPI packets
	// only above this many per second (per CPU); 0 drops them all.
	DropAbove uint32
	RateMax   uint32 // sources with a DropAbove bucket; 0: DefaultRateMax
	// ICMPMax and IKEMax size the ICMP-error and IKE tables; 0: the defaults.
	// Like the unknown-SPI table they keep an LRU per CPU, so a program run on
	// one CPU (spiwatch read) needs them that many times larger.
	ICMPMax, IKEMax uint32
	KnownMax        uint32 // known-SA map size; 0: DefaultKnownMax
	UnknownMax      uint32 // unknown-SPI table size; 0: DefaultUnknownMax
	// XfrmLookup: on a known-SA map miss, the program asks the kernel's own SA table
	// (kfunc bpf_xdp_get_xfrm_state, Linux 6.8+), so an SA the kernel has just
	// installed counts as known before its event reaches the xfrm source. Where the
	// kernel cannot, Load turns it off and says why in Objects.XfrmLookupOff.
	XfrmLookup bool
	// PinPath, if set, is a directory on the BPF filesystem where maps and links
	// are pinned: they outlive the process, and the next one continues from them.
	PinPath string
}

// Validate checks the settings without touching the kernel.
func (s Settings) Validate() error {
	if len(s.NATTPorts) > MaxNATTPorts {
		return fmt.Errorf("too many NAT-T ports: %d given, at most %d", len(s.NATTPorts), MaxNATTPorts)
	}
	if s.DropAbove > 0 && !s.DropUnknown {
		return errors.New("a rate above which to drop needs drop mode: unknown-SPI packets pass otherwise")
	}
	if s.DropAbove > MaxDropAbove {
		return fmt.Errorf("drop rate %d packets/s: at most %d", s.DropAbove, MaxDropAbove)
	}
	seen := map[uint16]bool{}
	for _, p := range s.NATTPorts {
		switch {
		case p == 0:
			return errors.New("NAT-T port 0 is not a port")
		case p == 500:
			return errors.New("NAT-T port 500 is IKE's port; NAT-T uses its own port (4500 by default)")
		case seen[p]:
			return fmt.Errorf("NAT-T port %d given twice", p)
		}
		seen[p] = true
	}
	return nil
}

func (s Settings) withDefaults() Settings {
	if len(s.NATTPorts) == 0 {
		s.NATTPorts = []uint16{DefaultNATTPort}
	}
	if s.KnownMax == 0 {
		s.KnownMax = DefaultKnownMax
	}
	if s.UnknownMax == 0 {
		s.UnknownMax = DefaultUnknownMax
	}
	if s.RateMax == 0 {
		s.RateMax = DefaultRateMax
	}
	if s.ICMPMax == 0 {
		s.ICMPMax = DefaultICMPMax
	}
	if s.IKEMax == 0 {
		s.IKEMax = DefaultIKEMax
	}
	return s
}

// Objects are the loaded maps and program instances.
type Objects struct {
	Settings Settings // as loaded: XfrmLookup is false when it could not be had
	Maps     *maps.Maps
	// MultiBuffer is nil when the program handles multi-buffer (jumbo) frames,
	// else why it cannot (the kernel is too old).
	MultiBuffer error
	// XfrmLookupOff says why XfrmLookup was asked for and is off; nil otherwise.
	XfrmLookupOff error

	spec *ebpf.CollectionSpec
	coll *ebpf.Collection

	mu       sync.Mutex
	progs    map[int]*ebpf.Program // by interface slot
	attached []*Attachment
	pinLock  *os.File // held while loaded with a pin path (see lockPins)
	// freshPins: the pin directory held no maps before this load, so Abort
	// removes the ones it made.
	freshPins bool
	// PinsGoAtExit: the BPF filesystem holding the pins was mounted by this load
	// in a mount namespace of this command's own (ip netns exec): the pins, and
	// with them the attached program, go when the command ends.
	PinsGoAtExit bool
}

// Load loads the BPF object with its settings: maps and the program instance of slot 0.
func Load(s Settings) (*Objects, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	return LoadSpec(spec, s)
}

// LoadSpec is Load for another build of the classifier (benchmarks compare
// variants in one run); Load uses the committed object.
func LoadSpec(spec *ebpf.CollectionSpec, s Settings) (*Objects, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s = s.withDefaults()
	memlockErr := rlimit.RemoveMemlock() // needed before 5.11 only; reported if loading fails
	var ports [MaxNATTPorts]uint16
	copy(ports[:], s.NATTPorts)
	var lookupOff error
	if s.XfrmLookup {
		if lookupOff = XfrmLookupSupported(); lookupOff != nil {
			s.XfrmLookup = false
		}
	}
	// The token bucket in nanoseconds of credit: a packet costs 1e9/rate, the
	// bucket holds exactly rate packets (one second's worth).
	var cost, burst uint64
	if s.DropAbove > 0 {
		cost = uint64(1e9) / uint64(s.DropAbove)
		burst = cost * uint64(s.DropAbove)
	}
	settings := map[string]any{
		"natt_ports":      ports,
		"natt_port_count": uint32(len(s.NATTPorts)),
		"drop_unknown":    b32(s.DropUnknown),
		"drop_cost_ns":    cost,
		"drop_burst_ns":   burst,
		"iface_slot":      uint32(0),
		"front_shift":     maps.FrontShift(maps.FrontSlots(s.KnownMax)),
	}
	if _, ok := spec.Variables["xfrm_lookup"]; ok || s.XfrmLookup {
		settings["xfrm_lookup"] = b32(s.XfrmLookup)
	}
	if _, ok := spec.Variables["capture_supported"]; ok { // benchmark variants may lack it
		settings["capture_supported"] = captureSupported()
	}
	if _, ok := spec.Variables["nr_cpus"]; ok {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, fmt.Errorf("counting possible CPUs: %w", err)
		}
		settings["nr_cpus"] = uint32(n)
	}
	for name, v := range settings {
		vs, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("BPF object has no setting %q: rebuild with make generate", name)
		}
		if err := vs.Set(v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}
	spec.Maps[maps.KnownName].MaxEntries = s.KnownMax
	front := maps.FrontSlots(s.KnownMax)
	for _, name := range []string{maps.KnownSlotName, maps.KnownFrontName} {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("BPF object has no map %s: rebuild with make generate", name)
		}
		ms.MaxEntries = front
	}
	spec.Maps[maps.KnownMultiName].MaxEntries = knownMultiMax(s.KnownMax)
	spec.Maps[maps.UnknownName].MaxEntries = s.UnknownMax
	spec.Maps[maps.RateName].MaxEntries = s.RateMax
	spec.Maps[maps.ICMPName].MaxEntries = s.ICMPMax
	spec.Maps[maps.IKEName].MaxEntries = s.IKEMax

	mbErr := dropMultiBuffer(spec)

	var opts ebpf.CollectionOptions
	var pinLock *os.File
	fresh, pinsGo := false, false
	if s.PinPath != "" {
		mounted, err := prepareBPFFS(s.PinPath)
		if err != nil {
			return nil, err
		}
		pinsGo = mounted && privateMountNS()
		if pinLock, err = lockPins(s.PinPath); err != nil {
			return nil, err
		}
		fresh = !anyPinned(s.PinPath)
		if err := usePinLayout(spec, s.PinPath); err != nil {
			pinLock.Close()
			return nil, err
		}
		for _, name := range pinnedMaps {
			spec.Maps[name].Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = s.PinPath
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil && s.XfrmLookup {
		// The kernel has the kfunc but refuses the program with it (an older
		// signature, XDP not allowed to call it): load without.
		lookupOff = fmt.Errorf("the program does not load with it: %w", loadError(err, memlockErr))
		s.XfrmLookup = false
		if verr := spec.Variables["xfrm_lookup"].Set(uint32(0)); verr != nil {
			closeLock(pinLock)
			return nil, fmt.Errorf("setting xfrm_lookup: %w", verr)
		}
		coll, err = ebpf.NewCollectionWithOptions(spec, opts)
	}
	if err != nil {
		closeLock(pinLock)
		return nil, pinError(s.PinPath, loadError(err, memlockErr))
	}
	m, err := maps.FromCollection(coll.Maps)
	if err != nil {
		coll.Close()
		closeLock(pinLock)
		return nil, err
	}
	return &Objects{
		Settings: s, Maps: m, spec: spec, coll: coll, MultiBuffer: mbErr, XfrmLookupOff: lookupOff,
		progs: map[int]*ebpf.Program{0: coll.Programs[progName]}, pinLock: pinLock, freshPins: fresh, PinsGoAtExit: pinsGo,
	}, nil
}

func b32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// captureSupported says whether the kernel has bpf_xdp_load_bytes (5.18), which
// spiwatch capture needs; without it the capture code stays dead and unverified.
func captureSupported() uint32 {
	for _, fn := range []asm.BuiltinFunc{asm.FnXdpLoadBytes, asm.FnLoop, asm.FnMapLookupPercpuElem} {
		if features.HaveProgramHelper(ebpf.XDP, fn) != nil {
			return 0
		}
	}
	return 1
}

// XfrmLookupSupported says whether the kernel offers what Settings.XfrmLookup
// needs: nil if its BTF has the kfuncs bpf_xdp_get_xfrm_state and
// bpf_xdp_xfrm_state_release (Linux 6.8+ with CONFIG_XFRM and BTF), else why not.
// Whether the program then loads with them is Load's to find out.
func XfrmLookupSupported() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("xfrm lookup needs kernel BTF (/sys/kernel/btf/vmlinux): %w", err)
	}
	for _, name := range []string{"bpf_xdp_get_xfrm_state", "bpf_xdp_xfrm_state_release"} {
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			return fmt.Errorf("this kernel lacks the kfunc %s (Linux 6.8 or later with CONFIG_XFRM): %w", name, err)
		}
	}
	return nil
}

func loadError(err error, memlockErr error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("loading BPF program: the verifier rejected it: %+v", ve)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("loading BPF program: this kernel lacks a feature spiwatch needs (Linux 5.15 or later required): %w", err)
	}
	if isPermission(err) {
		msg := "run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
		if memlockErr != nil {
			msg += fmt.Sprintf("; raising the memlock limit also failed (%v): try ulimit -l unlimited or LimitMEMLOCK=infinity", memlockErr)
		}
		return fmt.Errorf("loading BPF program: %w: %s", err, msg)
	}
	if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("loading BPF program: %w: the kernel could not allocate the maps; the tables' sizes (--unknown-table-size, --known-table-size) decide most of it: give smaller ones", err)
	}
	return fmt.Errorf("loading BPF program: %w", err)
}

// Program returns the program instance that counts into interface slot slot,
// loading it on first use. Every instance shares the same maps.
func (o *Objects) Program(slot int) (*ebpf.Program, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.programLocked(slot)
}

func (o *Objects) programLocked(slot int) (*ebpf.Program, error) {
	if p, ok := o.progs[slot]; ok {
		return p, nil
	}
	if slot < 0 || slot >= maps.MaxIfaces {
		return nil, fmt.Errorf("at most %d interfaces can be watched at once", maps.MaxIfaces)
	}
	spec := o.spec.Copy()
	if err := spec.Variables["iface_slot"].Set(uint32(slot)); err != nil {
		return nil, fmt.Errorf("setting iface_slot: %w", err)
	}
	replace := map[string]*ebpf.Map{}
	for name, m := range o.coll.Maps {
		if !strings.HasPrefix(name, ".rodata") { // every instance has its own .rodata (its slot)
			replace[name] = m
		}
	}
	// Only the program is wanted; drop the other maps' specs so nothing else is created
	// besides this instance's own .rodata.
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return nil, loadError(err, nil)
	}
	p := coll.DetachProgram(progName)
	coll.Close()
	o.progs[slot] = p
	return p, nil
}

// Attached returns the current attachments.
func (o *Objects) Attached() []*Attachment {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*Attachment(nil), o.attached...)
}

// Close detaches every interface and releases all kernel objects; with a pin path
// the pinned links stay attached and the pinned maps keep counting. Safe to call
// twice.
func (o *Objects) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var errs []error
	for _, a := range o.attached {
		closeProg(a.prev)
		a.prev = nil
		if a.pinned != "" && a.link != nil {
			a.link.Close() // the pin keeps it attached
			continue
		}
		if err := a.detach(); err != nil {
			errs = append(errs, err)
		}
	}
	o.attached = nil
	for slot, p := range o.progs {
		if slot != 0 {
			p.Close()
		}
	}
	o.progs = map[int]*ebpf.Program{}
	if o.Maps != nil {
		if err := o.Maps.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if o.coll != nil {
		o.coll.Close()
		o.coll = nil
	}
	closeLock(o.pinLock) // last: the links are back in the pins' hands
	o.pinLock = nil
	return errors.Join(errs...)
}

// Abort undoes a start that failed midway, so that no interface is left half
// watched: links this run made are detached and unpinned, pinned links it took
// over get their previous program back, and maps it pinned in a directory that
// had none are removed. Then it closes like Close.
func (o *Objects) Abort() error {
	o.mu.Lock()
	var errs []error
	for _, a := range o.attached {
		if a.prev != nil && a.link != nil {
			if err := a.link.Update(a.prev); err != nil {
				errs = append(errs, fmt.Errorf("giving %s back its previous program: %w", a.Iface, err))
			}
			a.link.Close() // stays pinned, as before this run
			closeProg(a.prev)
			a.link, a.prev = nil, nil
			continue
		}
		if err := a.detach(); err != nil {
			errs = append(errs, err)
		}
	}
	o.attached = nil
	if dir := o.Settings.PinPath; dir != "" && o.freshPins {
		// Still under the pin lock: no other run --pin uses dir meanwhile.
		if pins, err := PinnedLinks(dir); err == nil && len(pins) == 0 {
			errs = append(errs, Unpin(dir))
		}
	}
	o.mu.Unlock()
	errs = append(errs, o.Close())
	return errors.Join(errs...)
}

// knownMultiMax sizes the map of SPIs shared by several SAs: rare (the receiver
// picks SPIs, unique per destination), so an eighth of the known-SA map.
func knownMultiMax(knownMax uint32) uint32 {
	return min(knownMax, max(knownMax/8, 64))
}
