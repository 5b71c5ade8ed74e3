"""focalsam.data"""
