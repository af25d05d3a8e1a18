//go:build linux

package rdma

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// mlx5Sysfs adds a ConnectX device, whose driver sysfs names through device/driver, to the
// rxe layout.
func mlx5Sysfs(t *testing.T) {
	files := rxeSysfs()
	const ib = "class/infiniband/mlx5_0/"
	files["class/infiniband_verbs/uverbs1/ibdev"] = "mlx5_0\n"
	files[ib+"node_guid"] = "0002:c903:0001:2345\n"
	files[ib+"ports/1/state"] = "4: ACTIVE\n"
	files["bus/pci/drivers/mlx5_core/bind"] = ""
	fakeSysfs(t, files)
	pci := filepath.Join(sysfsRoot, "devices/pci0000:00/0000:00:02.0")
	if err := os.MkdirAll(pci, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(sysfsRoot, "bus/pci/drivers/mlx5_core"), filepath.Join(pci, "driver")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(pci, filepath.Join(sysfsRoot, ib, "device")); err != nil {
		t.Fatal(err)
	}
}

// withoutLibibverbs makes the provider load a library that does not exist, until the test ends.
func withoutLibibverbs(t *testing.T) {
	old := LibibverbsName
	LibibverbsName = "libibverbs-not-installed.so.1"
	libOnce = sync.Once{}
	t.Cleanup(func() {
		LibibverbsName = old
		libOnce = sync.Once{}
	})
}

func TestProviderChoice(t *testing.T) {
	mlx5Sysfs(t)
	withoutLibibverbs(t)
	rxe, err := DeviceByName("rxe0")
	if err != nil {
		t.Fatal(err)
	}
	mlx, err := DeviceByName("mlx5_0")
	if err != nil {
		t.Fatal(err)
	}
	if rxe.Driver != "rdma_rxe" || mlx.Driver != "mlx5_core" {
		t.Fatalf("drivers %q and %q, want rdma_rxe and mlx5_core", rxe.Driver, mlx.Driver)
	}
	tests := []struct {
		choice  ProviderChoice
		dev     Device
		want    string
		errs    []error
		errText []string
	}{
		{ProviderNative, rxe, "rxe", nil, nil},
		{ProviderAuto, rxe, "rxe", nil, nil},
		{"", rxe, "rxe", nil, nil},
		{ProviderNative, mlx, "", []error{ErrNoProvider}, []string{"mlx5_0 (driver mlx5_core) has no native provider"}},
		{ProviderAuto, mlx, "", []error{ErrNoProvider, ErrNoLibibverbs},
			[]string{"mlx5_0 (driver mlx5_core) needs libibverbs", "libibverbs-not-installed.so.1", "install libibverbs1 and ibverbs-providers"}},
		{ProviderLibibverbs, rxe, "", []error{ErrNoProvider, ErrNoLibibverbs}, []string{"rxe0 (driver rdma_rxe) needs libibverbs"}},
		{"rxe", rxe, "", nil, []string{`provider "rxe" is not auto, native or libibverbs`}},
	}
	for _, tc := range tests {
		got, err := tc.choice.ProviderFor(tc.dev)
		if got != tc.want || (err == nil) != (tc.errs == nil && tc.errText == nil) {
			t.Errorf("%s for %s = %q, %v; want %q", tc.choice, tc.dev.Name, got, err, tc.want)
			continue
		}
		for _, e := range tc.errs {
			if !errors.Is(err, e) {
				t.Errorf("%s for %s: %v does not wrap %v", tc.choice, tc.dev.Name, err, e)
			}
		}
		for _, s := range tc.errText {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s for %s: %v does not say %q", tc.choice, tc.dev.Name, err, s)
			}
		}
	}
	if _, err := OpenWith(mlx, ProviderAuto); !errors.Is(err, ErrNoLibibverbs) {
		t.Errorf("opening mlx5_0 without libibverbs: %v, want ErrNoLibibverbs", err)
	}
	for _, s := range []string{"", "auto", "native", "libibverbs"} {
		if _, err := ParseProviderChoice(s); err != nil {
			t.Errorf("ParseProviderChoice(%q): %v", s, err)
		}
	}
	if _, err := ParseProviderChoice("mlx5"); err == nil {
		t.Error("ParseProviderChoice(mlx5) succeeded")
	}
}

// TestProviderLibibverbsWithoutDevice checks, where libibverbs is installed, the message for a
// device it has no provider for (here: a device that exists only in the fake sysfs).
func TestProviderLibibverbsWithoutDevice(t *testing.T) {
	mlx5Sysfs(t)
	if err := LibibverbsStatus(); err != nil {
		t.Skipf("libibverbs is not installed: %v", err)
	}
	mlx, err := DeviceByName("mlx5_0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = ProviderAuto.ProviderFor(mlx)
	if !errors.Is(err, ErrNoProvider) || !strings.Contains(err.Error(), "libibverbs has no user-space provider for device mlx5_0 (driver mlx5_core)") {
		t.Errorf("auto for a device libibverbs does not list: %v", err)
	}
}
