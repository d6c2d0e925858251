package datapath

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
)

// A value converted between layouts keeps every field by name, wherever it
// moved; a new field starts at zero, a removed one is dropped; arrays are
// converted element by element.
func TestConvertFieldsByName(t *testing.T) {
	u32 := &shape{Kind: "int", Size: 4}
	u16 := &shape{Kind: "int", Size: 2}
	pair := &shape{Kind: "struct", Size: 6, Fields: []field{{"lo", 0, u16}, {"hi", 2, u32}}}
	old := &shape{Kind: "struct", Size: 4 + 4 + 2*6, Fields: []field{
		{"gone", 0, u32}, {"vni", 4, u32}, {"pairs", 8, &shape{Kind: "array", Size: 12, Len: 2, Elem: pair}}}}
	now := &shape{Kind: "struct", Size: 4 + 3*6 + 4, Fields: []field{
		{"vni", 0, u32}, {"pairs", 4, &shape{Kind: "array", Size: 18, Len: 3, Elem: pair}}, {"added", 22, u32}}}
	src := make([]byte, old.Size)
	binary.LittleEndian.PutUint32(src[0:], 0xdead)
	binary.LittleEndian.PutUint32(src[4:], 4242)
	for i := range 2 {
		binary.LittleEndian.PutUint16(src[8+6*i:], uint16(10+i))
		binary.LittleEndian.PutUint32(src[8+6*i+2:], uint32(100+i))
	}
	in := reflect.New(reflect.ArrayOf(len(src), reflect.TypeFor[byte]())).Elem()
	reflect.Copy(in, reflect.ValueOf(src))
	out := convert(now, old, in)
	got := make([]byte, out.Len())
	reflect.Copy(reflect.ValueOf(got), out)
	want := make([]byte, now.Size)
	binary.LittleEndian.PutUint32(want[0:], 4242)
	for i := range 2 {
		binary.LittleEndian.PutUint16(want[4+6*i:], uint16(10+i))
		binary.LittleEndian.PutUint32(want[4+6*i+2:], uint32(100+i))
	}
	if !bytes.Equal(got, want) {
		t.Errorf("converted\n got %x\nwant %x", got, want)
	}
}

// The layout this build pins describes every pinned map with its key and
// value, so that a later version can migrate them.
func TestLayoutDescribesEveryMap(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	l := layoutOf(spec)
	for _, name := range []string{"slots", "tunnels", "peers", "vni_dst", "vnis", "vpc_routes", "deny", "leases", "flows", "stats", "config", "by_ifindex"} {
		m, ok := l[name]
		if !ok || m.Key == nil || m.Value == nil || m.Value.Size != m.ValueSize || m.Key.Size != m.KeySize {
			t.Errorf("map %s: layout %+v", name, m)
		}
	}
	if b, err := json.Marshal(l); err != nil || len(b) >= layoutBytes/2 {
		t.Errorf("layout JSON of %d bytes (room for %d): %v", len(b), layoutBytes, err)
	}
	if f := l["tunnels"].Value.Fields; len(f) == 0 || f[0].Name != "vni" {
		t.Errorf("tunnel_info's fields: %+v", f)
	}
}

// A field whose integer size or kind changed is refused, not zeroed.
func TestConvertibleRefusesLossyChanges(t *testing.T) {
	u32 := &shape{Kind: "int", Size: 4}
	u16 := &shape{Kind: "int", Size: 2}
	was := &shape{Kind: "struct", Size: 8, Fields: []field{{"vni", 0, u32}, {"port", 4, u16}}}
	for _, tc := range []struct {
		now *shape
		ok  bool
	}{
		{&shape{Kind: "struct", Size: 8, Fields: []field{{"port", 0, u16}, {"vni", 4, u32}}}, true},
		{&shape{Kind: "struct", Size: 8, Fields: []field{{"vni", 0, u32}, {"port", 4, u32}}}, false},
		{&shape{Kind: "struct", Size: 8, Fields: []field{{"vni", 0, &shape{Kind: "array", Size: 4, Len: 4, Elem: &shape{Kind: "int", Size: 1}}}}}, false},
		{&shape{Kind: "struct", Size: 4, Fields: []field{{"vni", 0, u32}}}, true},
	} {
		if err := convertible(tc.now, was); (err == nil) != tc.ok {
			t.Errorf("convertible(%+v): %v, want ok %t", tc.now.Fields, err, tc.ok)
		}
	}
}

// thisLayout is the layout this build pins, fresh (its shapes are the
// caller's to change).
func thisLayout(t testing.TB) map[string]mapLayout {
	t.Helper()
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	return layoutOf(spec)
}

// fieldOf is the field of map's value (or, with key, its key) named name.
func fieldOf(t testing.TB, l map[string]mapLayout, m string, key bool, name string) *field {
	t.Helper()
	s := l[m].Value
	if key {
		s = l[m].Key
	}
	for i := range s.Fields {
		if s.Fields[i].Name == name {
			return &s.Fields[i]
		}
	}
	t.Fatalf("map %s has no field %s", m, name)
	return nil
}

// convertEntry converts a zeroed key and value of was's sizes to now's
// layout, after the checks a migration makes, as a migration converts
// each entry; it reports whether the checks let it.
func convertEntry(was, now mapLayout) bool {
	if was.Key == nil || was.Value == nil || now.Key == nil || now.Value == nil ||
		convertible(now.Key, was.Key) != nil || convertible(now.Value, was.Value) != nil {
		return false
	}
	convert(now.Key, was.Key, reflect.New(reflect.ArrayOf(int(was.KeySize), reflect.TypeFor[byte]())).Elem())
	convert(now.Value, was.Value, reflect.New(reflect.ArrayOf(int(was.ValueSize), reflect.TypeFor[byte]())).Elem())
	return true
}

// tampers are pinned layouts that lie about their maps, each changed from
// this build's by one lie, and what decodeLayout says of each. The first
// ones made a migration panic (slice bounds out of range, a nil
// dereference); the others were accepted.
var tampers = []struct {
	name   string
	tamper func(testing.TB, map[string]mapLayout)
	want   string
}{
	{"an offset past the value", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_mac").Off = 4000
	}, `map slots: value: field "slot_mac" of 6 bytes at offset 4000, past the struct's 20 bytes`},
	{"an offset that wraps around", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "host_mac").Off = math.MaxUint32 - 2
	}, `map slots: value: field "host_mac" of 6 bytes at offset 4294967293, past the struct's 20 bytes`},
	{"an array without its element's shape", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_mac").Shape.Elem = nil
	}, `map slots: value: field "slot_mac": an array without its element's shape`},
	{"an element size that lies", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "flows", false, "f").Shape.Elem.Size = 32
	}, `map flows: value: field "f": an array of 128 32-byte elements in 2048 bytes`},
	{"a field without a shape", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_ip").Shape = nil
	}, `map slots: value: field "slot_ip" without a shape`},
	{"a value shape larger than the map's values", func(t testing.TB, l map[string]mapLayout) {
		l["slots"].Value.Size = 24
		fieldOf(t, l, "slots", false, "host_mac").Off = 18
	}, `map slots: value: a 24-byte struct for 20-byte values`},
	{"a key field past the key", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "vni_dst", true, "ip").Off = 8
	}, `map vni_dst: key: field "ip" of 4 bytes at offset 8, past the struct's 8 bytes`},
	{"an array longer than its bytes", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "leases", false, "inbound").Shape.Len = 17
	}, `map leases: value: field "inbound": an array of 17 16-byte elements in 256 bytes`},
	{"overlapping fields", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_ip").Off = 2
	}, `map slots: value: fields "host_ifindex" and "slot_ip" overlap`},
	{"two fields of one name", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_ip").Name = "host_ifindex"
	}, `map slots: value: two fields named "host_ifindex"`},
	{"a 3-byte integer", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "host_ifindex").Shape = &shape{Kind: "int", Size: 3}
	}, `map slots: value: field "host_ifindex": a 3-byte int`},
	{"a kind no layout has", func(t testing.TB, l map[string]mapLayout) {
		fieldOf(t, l, "slots", false, "slot_ip").Shape.Kind = "float"
	}, `map slots: value: field "slot_ip": a shape of kind "float"`},
	{"a struct of too many fields", func(t testing.TB, l map[string]mapLayout) {
		v := l["config"].Value
		for i := range maxFields {
			v.Fields = append(v.Fields, field{Name: fmt.Sprintf("empty%d", i), Off: 0, Shape: &shape{Kind: "struct"}})
		}
	}, `map config: value: a struct of 271 fields (at most 256)`},
	{"values larger than the kernel's", func(t testing.TB, l map[string]mapLayout) {
		m := l["slots"]
		m.ValueSize, m.Value.Size = 8<<20, 8<<20
		l["slots"] = m
	}, `map slots: 8388608-byte values (the kernel's are at most 4194304)`},
	{"a map of no type", func(t testing.TB, l map[string]mapLayout) {
		m := l["slots"]
		m.Type = ""
		l["slots"] = m
	}, `map slots: no map type`},
}

// A pinned layout that lies about a map is refused by the decoder, saying
// what is wrong, before a migration reads an entry by it: an offset or
// size that does not fit the value made the conversion panic, so the
// daemon crash-looped on every start.
func TestTamperedLayoutsAreRefused(t *testing.T) {
	now := thisLayout(t)
	for _, tc := range tampers {
		t.Run(tc.name, func(t *testing.T) {
			l := thisLayout(t)
			tc.tamper(t, l)
			b, err := json.Marshal(l)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeLayout(b)
			if err == nil {
				for name, was := range got {
					convertEntry(was, now[name]) // as a migration would
				}
				t.Fatalf("accepted")
			}
			if err.Error() != tc.want {
				t.Errorf("refused with\n%v\nwant\n%s", err, tc.want)
			}
		})
	}
}

// The layouts netslotd writes are accepted: this build's, and the older
// one the upgrade test pins (netslot_testlayout), which converts to this
// build's.
func TestBuiltLayoutsAreSound(t *testing.T) {
	older, err := ebpf.LoadCollectionSpec("datapath_testlayout_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	now := thisLayout(t)
	for build, l := range map[string]map[string]mapLayout{"this build": now, "netslot_testlayout": layoutOf(older)} {
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeLayout(b)
		if err != nil {
			t.Fatalf("%s's layout refused: %v", build, err)
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("%s's layout changed through JSON", build)
		}
		for name, was := range got {
			if !convertEntry(was, now[name]) {
				t.Errorf("%s's map %s does not convert to this build's", build, name)
			}
		}
	}
}

// FuzzDecodeLayout reads arbitrary bytes as a pinned layout, as a start
// does: decodeLayout answers (a layout or an error, never a panic), and
// every map's layout it accepts converts to each of this build's without
// a panic, as a migration converts an entry.
func FuzzDecodeLayout(f *testing.F) {
	now := thisLayout(f)
	for _, l := range []map[string]mapLayout{now, {"slots": now["slots"], "flows": now["flows"]}} {
		b, err := json.Marshal(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, tc := range tampers {
		l := thisLayout(f)
		tc.tamper(f, l)
		b, err := json.Marshal(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"m":{"type":"Array","key_size":4,"value_size":4,"key":{"kind":"int","size":4},"value":{"kind":"array","size":4,"len":4}}}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLayout(b)
		if err != nil {
			return
		}
		for _, was := range l {
			for _, to := range now {
				convertEntry(was, to)
			}
		}
	})
}

// A start on pinned maps whose layout cannot be trusted is refused, says
// what is wrong and what to do, and replaces nothing: a layout whose
// shapes do not fit its maps (before: a panic converting the first entry,
// on every start), one whose sizes are not the pinned maps' (before: the
// layout was ignored and the maps loaded as they were), and a pool of
// another size whose maps changed layout (before: converted into maps of
// the new size and pinned in place, then the load failed on the others).
// The refused maps open as they were once the layout is this build's
// again.
func TestMigrateRefusesUntrustedLayouts(t *testing.T) {
	testenv.RequireRoot(t)
	sweepPinRoots()
	cfg := slot.DefaultConfig(fmt.Sprintf("dplt%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26), 4)
	t.Cleanup(func() {
		if err := Remove(pinRoot, cfg.Prefix); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
	})
	dp, err := Open(Config{Slot: cfg, PinRoot: pinRoot})
	if err != nil {
		t.Fatal(err)
	}
	const hostIfindex = 4242
	err = dp.SetSlot(1, hostIfindex) // an entry the refused starts must keep
	dp.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := PinDir(pinRoot, cfg.Prefix)
	slotsID := func() ebpf.MapID {
		t.Helper()
		id, err := PinnedMapID(dir, "slots")
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	pinned := slotsID()
	for _, tc := range []struct {
		name   string
		slots  int
		tamper func(testing.TB, map[string]mapLayout)
		want   string
	}{
		{tampers[0].name, 4, tampers[0].tamper, tampers[0].want},
		{tampers[2].name, 4, tampers[2].tamper, tampers[2].want},
		{tampers[3].name, 4, tampers[3].tamper, tampers[3].want},
		{"sizes that are not the pinned map's", 4, func(t testing.TB, l map[string]mapLayout) {
			m := l["slots"]
			m.ValueSize, m.Value.Size = 24, 24
			m.Value.Fields = append(m.Value.Fields, field{"added", 20, &shape{Kind: "int", Size: 4}})
			l["slots"] = m
		}, "map slots: the pinned layout describes a map of type Array with 4-byte keys and 24-byte values; the pinned map is of type Array with 4-byte keys and 20-byte values"},
		{"a pool of another size", 8, func(t testing.TB, l map[string]mapLayout) {
			fieldOf(t, l, "slots", false, "host_mac").Name = "old_mac"
		}, "MaxEntries: 4 changed to 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := thisLayout(t)
			tc.tamper(t, l)
			if err := writeLayout(dir, l); err != nil {
				t.Fatal(err)
			}
			c := cfg
			c.Count = tc.slots
			dp, err := Open(Config{Slot: c, PinRoot: pinRoot})
			if err == nil {
				dp.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), fmt.Sprintf("run 'netslotd teardown' for prefix %q first", cfg.Prefix)) {
				t.Errorf("refused with\n%v\nwant ErrIncompatible, %q and what to do", err, tc.want)
			}
			t.Logf("refused: %v", err)
			if slotsID() != pinned {
				t.Errorf("the pinned slots map was replaced")
			}
		})
	}
	if err := writeLayout(dir, thisLayout(t)); err != nil {
		t.Fatal(err)
	}
	if dp, err = Open(Config{Slot: cfg, PinRoot: pinRoot}); err != nil {
		t.Fatalf("with this build's layout: %v", err)
	}
	defer dp.Close()
	var si datapathSlotInfo
	if err := dp.objs.Slots.Lookup(uint32(1), &si); err != nil || si.HostIfindex != hostIfindex || slotsID() != pinned {
		t.Errorf("slot 1 after the refused starts: %+v, %v (the same map: %t)", si, err, slotsID() == pinned)
	}
}
