"""StudyPacs.study_instance picks the middle instance (by InstanceNumber) of the first series (by SeriesNumber),
whatever the UIDs' order; a fake dicomweb client stands in for the PACS (same interface, rows in DICOM JSON)."""
import pydicom
import pytest
from pydicom import Dataset

from simdex.web.pacs import StudyPacs

STUDY = "1.2.3"


def _row(series_uid, series_no, sop, inst_no):
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, series_uid, sop
    if series_no is not None:
        ds.SeriesNumber = series_no
    if inst_no is not None:
        ds.InstanceNumber = inst_no
    return ds.to_json_dict()


class FakeClient:
    def __init__(self, rows):
        self.rows, self.retrieved = rows, []

    def search_for_instances(self, **kwargs):
        return self.rows

    def retrieve_instance(self, study, series, sop):
        self.retrieved.append((study, series, sop))
        ds = Dataset()
        ds.SOPInstanceUID = sop
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        return ds


@pytest.mark.parametrize("rows, expected", [
    # series 9.1 has the larger UID but SeriesNumber 1; its instances' UIDs run against their InstanceNumbers
    ([_row("9.1", 1, "9.1.1", 3), _row("9.1", 1, "9.1.2", 2), _row("9.1", 1, "9.1.3", 1), _row("1.1", 2, "1.1.1", 1)],
     ("9.1", "9.1.2")),
    # missing numbers sort last
    ([_row("1.1", None, "1.1.1", 1), _row("2.1", 5, "2.1.9", None), _row("2.1", 5, "2.1.8", 4),
      _row("2.1", 5, "2.1.7", 7)], ("2.1", "2.1.7")),
])
def test_the_middle_instance_of_the_first_series_by_number(rows, expected):
    pacs = StudyPacs("dicomweb+http://127.0.0.1:1/dicom-web")
    pacs.pacs.client = FakeClient(rows)
    data, sop = pacs.study_instance(STUDY)
    assert sop == expected[1] and pacs.pacs.client.retrieved == [(STUDY, *expected)]
    assert pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID == expected[1]
