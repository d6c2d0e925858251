package datapath

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"testing"
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
